"""Routing state that outlives a process and is shared by every gateway process: policies and their history."""
