"""A plugin that fails at import time, to test that other plugins still load."""

raise ImportError("this plugin needs a dependency that is not installed (simulated)")
