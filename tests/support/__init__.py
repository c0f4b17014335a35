"""What the tests share, once: free ports, a fake clock, the real servers they start (redis-server,
moto_server) and the fixtures loaded for every test module through ``pytest_plugins``."""
