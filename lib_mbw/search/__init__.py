"""Search: space, optimizer facade, the evaluation loop, crash-safe history, stopping and resume."""
