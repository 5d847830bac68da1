rule master_bias:
    input:
        frames=bias_frames,
        screening="results/{target}/screening.csv",
    output:
        "results/{target}/masters{session}/bias.fits",
    log:
        "logs/master_bias/{target}{session}.log",
    benchmark:
        "benchmarks/master_bias/{target}{session}.tsv"
    conda:
        "../envs/calibrate.yaml"
    threads: 1
    resources:
        mem_mb=memory_estimate(config["calibration"]["memory_mb"] + 600, 0),
        runtime=runtime_estimate(10, 10),
    params:
        code=library_code("master_bias.py"),
        method=config["calibration"]["combine_method"],
        sigma_low=config["calibration"]["sigma_low"],
        sigma_high=config["calibration"]["sigma_high"],
        memory_mb=config["calibration"]["memory_mb"],
    script:
        "../scripts/master_bias.py"


rule master_dark:
    input:
        unpack(optional_bias),
        frames=dark_frames,
        screening="results/{target}/screening.csv",
    output:
        master="results/{target}/masters{session}/{kind}.fits",
    log:
        "logs/master_dark/{target}{session}-{kind}.log",
    benchmark:
        "benchmarks/master_dark/{target}{session}-{kind}.tsv"
    wildcard_constraints:
        target=DEEP_SKY_TARGETS,
        kind="dark|darkflat",
    conda:
        "../envs/calibrate.yaml"
    threads: 1
    resources:
        mem_mb=memory_estimate(config["calibration"]["memory_mb"] + 600, 0),
        runtime=runtime_estimate(10, 10),
    params:
        code=library_code("master_dark.py"),
        method=config["calibration"]["combine_method"],
        sigma_low=config["calibration"]["sigma_low"],
        sigma_high=config["calibration"]["sigma_high"],
        memory_mb=config["calibration"]["memory_mb"],
        exposure_tolerance=config["calibration"]["dark_exposure_tolerance"],
        temperature_tolerance=config["calibration"]["dark_temperature_tolerance"],
    script:
        "../scripts/master_dark.py"


rule hot_pixel_map:
    input:
        "results/{target}/masters{session}/dark.fits",
    output:
        "results/{target}/masters{session}/hot_pixels.fits",
    log:
        "logs/hot_pixel_map/{target}{session}.log",
    conda:
        "../envs/calibrate.yaml"
    threads: 1
    resources:
        mem_mb=memory_estimate(400, 10),
        runtime=5,
    params:
        code=library_code("hot_pixel_map.py"),
        sigma=config["calibration"]["hot_pixel_sigma"],
    script:
        "../scripts/hot_pixel_map.py"


rule master_flat:
    input:
        unpack(flat_masters),
        frames=flat_frames,
        screening="results/{target}/screening.csv",
    output:
        "results/{target}/masters{session}/flat.fits",
    log:
        "logs/master_flat/{target}{session}.log",
    benchmark:
        "benchmarks/master_flat/{target}{session}.tsv"
    conda:
        "../envs/calibrate.yaml"
    threads: 1
    resources:
        mem_mb=memory_estimate(config["calibration"]["memory_mb"] + 600, 0),
        runtime=runtime_estimate(10, 10),
    params:
        code=library_code("master_flat.py"),
        method=config["calibration"]["combine_method"],
        sigma_low=config["calibration"]["sigma_low"],
        sigma_high=config["calibration"]["sigma_high"],
        memory_mb=config["calibration"]["memory_mb"],
        exposure_tolerance=config["calibration"]["dark_exposure_tolerance"],
        temperature_tolerance=config["calibration"]["dark_temperature_tolerance"],
    script:
        "../scripts/master_flat.py"


rule sky_flat:
    input:
        unpack(calibration_masters),
        lights=light_frames,
        screening="results/{target}/screening.csv",
    output:
        flat="results/{target}/masters{session}/sky_flat.fits",
        summary="results/{target}/masters{session}/sky_flat.json",
    log:
        "logs/sky_flat/{target}{session}.log",
    benchmark:
        "benchmarks/sky_flat/{target}{session}.tsv"
    wildcard_constraints:
        target=DEEP_SKY_TARGETS,
    conda:
        "../envs/calibrate.yaml"
    threads: 1
    resources:
        mem_mb=memory_estimate(config["calibration"]["memory_mb"] + 800, 0),
        runtime=runtime_estimate(10, 20),
    params:
        code=library_code("sky_flat.py"),
        memory_mb=config["calibration"]["memory_mb"],
        min_lights=config["calibration"]["sky_flat"]["min_lights"],
        min_dither_px=config["calibration"]["sky_flat"]["min_dither_px"],
        smooth_px=config["calibration"]["sky_flat"]["smooth_px"],
        mask_sigma=config["calibration"]["sky_flat"]["mask_sigma"],
        mask_grow_px=config["calibration"]["sky_flat"]["mask_grow_px"],
        combine=config["calibration"]["sky_flat"]["combine"],
        iterations=config["calibration"]["sky_flat"]["iterations"],
        gradient_order=config["calibration"]["sky_flat"]["gradient_order"],
        nebula_sigma=config["calibration"]["sky_flat"]["nebula_sigma"],
        sessions=frame_sessions,
        sources=frame_sources,
        owners=master_owners,
        dark_fraction=config["calibration"]["lights_dark_fraction"],
    script:
        "../scripts/sky_flat.py"


rule calibrate_light:
    input:
        unpack(light_masters),
        light="results/{target}/ingest/light/{frame}.fits",
    output:
        intermediate("results/{target}/calibrated/{frame}.fits"),
        **CALIBRATED_CFA,
    log:
        "logs/calibrate_light/{target}/{frame}.log",
    benchmark:
        "benchmarks/calibrate_light/{target}/{frame}.tsv"
    conda:
        "../envs/calibrate.yaml"
    threads: 1
    resources:
        mem_mb=memory_estimate(500, 14),
        runtime=runtime_estimate(5, 10),
    params:
        code=library_code("calibrate_light.py"),
        cosmetic=config["calibration"]["cosmetic"],
        cosmetic_sigma=config["calibration"]["cosmetic_sigma"],
        cosmic_rays={
            "enabled": config["calibration"]["cosmic_rays"],
            "sigclip": config["calibration"]["cosmic_ray_sigclip"],
            "objlim": config["calibration"]["cosmic_ray_objlim"],
            "gain": config["calibration"]["cosmic_ray_gain"],
            "readnoise": config["calibration"]["cosmic_ray_readnoise"],
            "fill": config["calibration"]["cosmic_ray_fill"],
        },
        debayer_method=config["calibration"]["debayer_method"],
        flatless=config["calibration"]["flatless"],
        filter=light_filter_of,
        exposure_tolerance=config["calibration"]["dark_exposure_tolerance"],
        temperature_tolerance=config["calibration"]["dark_temperature_tolerance"],
    script:
        "../scripts/calibrate_light.py"
