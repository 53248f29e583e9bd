rule split_data:
    output:
        train="data/processed/train.parquet",
        val="data/processed/val.parquet",
        test="data/processed/test.parquet",
    params:
        source=config["data"]["source"],
        mirror_dir=str(resolve_path(config["data"]["mirror_dir"], ROOT)),
        hub_name=config["data"]["hub_name"],
        split=PROFILE["split"],
    log:
        "logs/split_data.log",
    script:
        "../scripts/split_data.py"
