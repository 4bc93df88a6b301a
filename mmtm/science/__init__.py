"""The paper's science: the MMTM network, the formulas of d_util and d_speed, and their meters."""
