"""Local SQLite storage for durably."""
