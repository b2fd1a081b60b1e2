"""What runs the processes: the supervisor of N gateway processes, stop signals, CPU affinity."""
