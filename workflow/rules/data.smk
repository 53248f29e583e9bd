rule split_data:
    """Seeded, class-balanced train/val/test splits of IMDB (mirror or hub); texts shared across splits
    are dropped, reported or an error (split.overlap)."""
    output:
        train=LAYOUT.split("train"),
        val=LAYOUT.split("val"),
        test=LAYOUT.split("test"),
    log:
        LAYOUT.log("split_data"),
    conda:
        CONDA_ENV
    params:
        code=source_digest("split_data.py"),
        source=config["data"]["source"],
        mirror_dir=workdir_path(config["data"]["mirror_dir"]),
        hub_name=config["data"]["hub_name"],
        split=PROFILE["split"],
    script:
        "../scripts/split_data.py"
