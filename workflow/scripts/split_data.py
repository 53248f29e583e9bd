"""Read IMDB (mirror or hub) and write the seeded, class-balanced train/val/test splits."""
from llm_anatomy.data import make_splits, read_imdb
from llm_anatomy.io import write_parquet
from llm_anatomy.logs import setup_logging

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup_logging(sm.log[0])
p = sm.params
frames = read_imdb(p.source, p.mirror_dir, p.hub_name)
splits = make_splits(frames, p.split["train"], p.split["val"], p.split["test"], p.split["seed"])
for name, df in splits.items():
    write_parquet(df, sm.output[name])
    log.info("%s: %d reviews, %d positive -> %s", name, len(df), int(df["label"].sum()), sm.output[name])
