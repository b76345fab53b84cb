"""Testing tools for durably."""
