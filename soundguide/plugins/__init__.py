"""Built-in plugins. Each module is what a third-party plugin would look like."""
