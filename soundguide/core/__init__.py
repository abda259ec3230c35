"""What every plugin builds on. Imports no plugin module."""
