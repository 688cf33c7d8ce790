"""Search: space, optimizer facade, loop, history (crash-safe), early stop and resume."""
