# PSF deconvolution: regularised Richardson-Lucy with an empirical PSF for stacks and images,
# multi-frame blind deconvolution (torch) for planetary sequences. See
# scripts/astroflow/restoration/deconvolve.py and scripts/astroflow/restoration/mfbd.py.


rule deconvolve:
    input:
        image=starless_input,
    output:
        fits="results/{target}/deconvolved.fits",
        tif="results/{target}/deconvolved.tif",
        tif32="results/{target}/deconvolved_f32.tif",
        png=report(
            "results/{target}/deconvolved.png",
            caption="../report/deconvolved.rst",
            category="{target}",
        ),
        psf="results/{target}/deconvolution/psf.fits",
        history="results/{target}/deconvolution/history.csv",
    log:
        "logs/deconvolve/{target}.log",
    benchmark:
        "benchmarks/deconvolve/{target}.tsv"
    wildcard_constraints:
        target=SINGLE_IMAGE_TARGETS,
    conda:
        "../envs/starless.yaml"
    threads: 1
    resources:
        mem_mb=memory_estimate(800, 30),
        runtime=runtime_estimate(10, 120),
    params:
        code=library_code("deconvolve.py"),
        iterations=config["deconvolution"]["iterations"],
        tv_weight=config["deconvolution"]["tv_weight"],
        stop_tol=config["deconvolution"]["stop_tol"],
        protect_stars=config["deconvolution"]["protect_stars"],
        grid=config["deconvolution"]["grid"],
        psf_size=config["deconvolution"]["psf_size"],
        psf_max_stars=config["deconvolution"]["psf_max_stars"],
        psf_threshold_sigma=config["deconvolution"]["psf_threshold_sigma"],
        fallback_fwhm=config["deconvolution"]["fallback_fwhm"],
        preview=config["preview"],
    script:
        "../scripts/deconvolve.py"


# The frames of the multi-frame deconvolution, globally aligned on the lucky stack's window, in
# one raw float32 file: the GPU job then reads minibatches of them without decoding video.
rule planetary_deconvolve_frames:
    input:
        unpack(planetary_dark),
        frames=planetary_lights,
        table="results/{target}/planetary/alignment.csv",
        reference="results/{target}/planetary/reference.fits",
    output:
        frames=temp("results/{target}/planetary/mfbd_frames.f32"),
        index="results/{target}/planetary/mfbd_frames.json",
    log:
        "logs/planetary_deconvolve_frames/{target}.log",
    wildcard_constraints:
        target=PLANETARY_TARGETS,
    conda:
        "../envs/planetary.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=runtime_estimate(5, 10),
    params:
        code=library_code("planetary_deconvolve_frames.py"),
        memory_mb=config["ingest"]["memory_mb"],
        decode_timeout_s=config["ingest"]["decode_timeout_s"],
        keep_percent=config["deconvolution"]["multiframe"]["keep_percent"],
        max_frames=config["deconvolution"]["multiframe"]["max_frames"],
    script:
        "../scripts/planetary_deconvolve_frames.py"


rule planetary_deconvolve:
    input:
        frames="results/{target}/planetary/mfbd_frames.f32",
        index="results/{target}/planetary/mfbd_frames.json",
        stack="results/{target}/stack.fits",
    output:
        fits="results/{target}/deconvolved.fits",
        tif="results/{target}/deconvolved.tif",
        tif32="results/{target}/deconvolved_f32.tif",
        png=report(
            "results/{target}/deconvolved.png",
            caption="../report/deconvolved_planetary.rst",
            category="{target}",
        ),
        history="results/{target}/planetary/mfbd_history.csv",
        psfs="results/{target}/planetary/mfbd_psfs.fits",
    log:
        "logs/planetary_deconvolve/{target}.log",
    benchmark:
        "benchmarks/planetary_deconvolve/{target}.tsv"
    wildcard_constraints:
        target=PLANETARY_TARGETS,
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=memory_estimate(1500, 2),
        runtime=runtime_estimate(15, 60),
    params:
        code=library_code("planetary_deconvolve.py"),
        psf_size=config["deconvolution"]["multiframe"]["psf_size"],
        epochs=config["deconvolution"]["multiframe"]["epochs"],
        batch=config["deconvolution"]["multiframe"]["batch"],
        lr=config["deconvolution"]["multiframe"]["lr"],
        psf_lr=config["deconvolution"]["multiframe"]["psf_lr"],
        psf_steps=config["deconvolution"]["multiframe"]["psf_steps"],
        tv_weight=config["deconvolution"]["multiframe"]["tv_weight"],
        patch=config["deconvolution"]["multiframe"]["patch"],
        overlap=config["deconvolution"]["multiframe"]["overlap"],
        seed=config["deconvolution"]["multiframe"]["seed"],
    script:
        "../scripts/planetary_deconvolve.py"


rule deconvolution_plot:
    input:
        deconvolution_history,
    output:
        report(
            "results/{target}/deconvolution.png",
            caption="../report/deconvolution.rst",
            category="{target}",
        ),
    log:
        "logs/deconvolution_plot/{target}.log",
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        code=library_code("deconvolution_plot.py"),
    script:
        "../scripts/deconvolution_plot.py"
