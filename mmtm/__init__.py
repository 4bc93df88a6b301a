"""mmtm: MMTM two-view networks, the greedy-learning metrics (d_util, d_speed) and balanced training."""
