"""Offline preprocessing."""
