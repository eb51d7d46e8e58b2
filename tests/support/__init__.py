"""Helpers the tests share: ports, the servers they start, the browser, the service installer."""
