"""Structured FFN pruning (the paper's section 3.4): threshold rules, target-sparsity search,
the random baseline, cost accounting, and the prune-and-evaluate driver."""
