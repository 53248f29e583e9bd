"""Read IMDB (mirror or hub) and write the seeded, class-balanced train/val/test splits; texts shared
across splits are dropped, reported or an error (split.overlap), and what was found goes into each file's info."""
from llm_anatomy.data import make_splits, read_imdb
from llm_anatomy.io import write_parquet
from llm_anatomy.logs import setup_logging

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup_logging(sm.log[0])
p = sm.params
frames = read_imdb(p.source, p.mirror_dir, p.hub_name)
hygiene: dict = {}
splits = make_splits(frames, p.split["train"], p.split["val"], p.split["test"], p.split["seed"],
                     p.split["overlap"], hygiene)
found, removed = hygiene["found"], hygiene["removed"]
(log.warning if hygiene["policy"] == "report" and any(hygiene["remaining"].values()) else log.info)(
    "texts shared across splits (whitespace-normalised): %d validation reviews in train, %d test reviews in train "
    "or validation, %d duplicates within train; policy %s: replaced %d validation and %d test reviews",
    found["val_in_train"], found["test_in_train_or_val"], found["duplicates_within_train"], hygiene["policy"],
    removed["val"], removed["test"])
for name, df in splits.items():
    write_parquet(df, sm.output[name], info={"overlap": hygiene})
    log.info("%s: %d reviews, %d positive -> %s", name, len(df), int(df["label"].sum()), sm.output[name])
