"""Structured FFN pruning (the paper's section 3.4) as a chain of steps: targets -> plan (threshold
rules, FLAP, random baseline) -> materialise (a smaller classifier folder) -> evaluate -> time -> metrics."""
