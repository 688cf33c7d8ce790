"""A fake AUTOMATIC1111 / Forge WebUI for tests (see README.md)."""
