"""The test lab: real servers the tests and the demo start (slapd, scim2-server under gunicorn,
an OAuth 2 server, a Samba AD DC, a SQLite storage for scim2-server) and the demo itself.

Never packaged with the product (a test builds the wheel and checks); the product's own
process helpers are in :mod:`deployments.processes`.
"""
