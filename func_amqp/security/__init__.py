"""Identity and trust: the certificate authority, keys, request signatures."""
