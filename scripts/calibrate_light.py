"""Entry script of rule calibrate_light: bias, dark, flat, cosmetic correction, debayer."""

import numpy as np

from astroflow.calibration.calibrate import (
    SKY_FLAT_TYPE,
    calibrate_light,
    calibrated_header,
    cosmetic_correction,
    match_dark,
    match_flat,
)
from astroflow.calibration.cosmic import remove_cosmic_rays
from astroflow.calibration.debayer import cfa_channel_map, debayer
from astroflow.io.fits import (
    REASON_KEY,
    image_shape,
    is_rejected,
    read_header,
    read_headers,
    read_image,
    write_image,
    write_rejected,
)
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
p = snakemake.params
keys = snakemake.input.keys()
# Bayer drizzle (drizzle.bayer) also takes the calibrated mosaic, before debayering
keep_cfa = "cfa" in snakemake.output.keys()
header = read_header(snakemake.input.light)
# a light of another size than its masters (the size of most of their frames, rule
# screen_frames) is one bad frame, passed on as rejected, not the end of the night
odd = None
for kind in ("bias", "dark", "flat"):
    if odd is None and kind in keys and not is_rejected(header):
        master = read_header(snakemake.input[kind])
        if not is_rejected(master) and image_shape(master) != image_shape(header):
            size, master_size = ("x".join(map(str, image_shape(h)[1::-1])) for h in (header, master))
            source = header.get("SRCFILE", snakemake.input.light)
            odd = f"{source}: size {size} differs from the master {kind}'s {master_size}"
if odd is not None:
    header[REASON_KEY] = odd
if is_rejected(header) or odd is not None:
    write_rejected(snakemake.output[0], header[REASON_KEY], header)
    if keep_cfa:
        write_rejected(snakemake.output.cfa, header[REASON_KEY], header)
    log.warning("%s passed through as rejected: %s", snakemake.input.light, header[REASON_KEY])
else:
    light, header = read_image(snakemake.input.light)
    masters = {}
    matching = []
    if "bias" in keys:
        masters["master_bias"] = read_image(snakemake.input.bias)
    if "dark" in keys:
        # one master per group of darks (rule master_dark): the one that matches this light
        dark_headers = read_headers(snakemake.input.dark)
        index = 0
        if len(dark_headers) > 1:
            index, note = match_dark(
                header, dark_headers, exposure_tolerance=p.exposure_tolerance,
                temperature_tolerance=p.temperature_tolerance,
            )
            matching.append(note)
            log.info("%s", note)
        masters["master_dark"] = read_image(snakemake.input.dark, hdu=index)
    flat_used = "none"
    if "flat" in keys:
        flat_header = read_header(snakemake.input.flat)
        if is_rejected(flat_header):
            # a sky flat the lights could not make (rule sky_flat): calibrated without a flat
            log.warning("%s: %s", snakemake.input.flat, flat_header[REASON_KEY])
        else:
            # one master per filter of the session's flats (rule master_flat): this light's
            flat_headers = read_headers(snakemake.input.flat)
            index = match_flat(p.filter, flat_headers, snakemake.input.flat)
            if len(flat_headers) > 1:
                matching.append(f"master flat {index} of {len(flat_headers)}: filter {p.filter}")
            masters["master_flat"] = read_image(snakemake.input.flat, hdu=index)
            flat_used = "sky" if flat_header.get("FLATTYPE") == SKY_FLAT_TYPE else "real"
    for kind in ("bias", "dark", "flat"):
        if f"master_{kind}" not in masters:
            log.warning("no master %s: %s correction skipped", kind, kind)
    data, history = calibrate_light(light, header, **masters)
    history = matching + history
    header = calibrated_header(header)
    header["FLATUSED"] = (flat_used, "flat field: real (flat frames), sky (from the lights), none")
    if flat_used == "sky":
        flat_header = masters["master_flat"][1]
        history.append(
            f"flat: sky flat from {flat_header['NCOMBINE']} lights, median shift {flat_header['DITHERPX']} px"
        )
    pattern = header.get("BAYERPAT")
    network = flat_used == "none" and "flatnet" in keys
    if p.cosmetic:
        hot = read_image(snakemake.input.hot_pixels)[0] if "hot_pixels" in keys else None
        data, n_hot, n_cold = cosmetic_correction(data, pattern, hot, sigma=p.cosmetic_sigma)
        history.append(f"astroflow cosmetic_correction: {n_hot} hot, {n_cold} cold pixels")
        log.info("cosmetic correction: %d hot, %d cold pixels", n_hot, n_cold)
    if p.cosmic_rays["enabled"]:
        settings = {key: value for key, value in p.cosmic_rays.items() if key != "enabled"}
        data, n_cosmic = remove_cosmic_rays(data, pattern, **settings)
        header["NCOSMIC"] = (n_cosmic, "cosmic-ray pixels (L.A.Cosmic), " + settings["fill"])
        history.append(f"astroflow remove_cosmic_rays (astroscrappy L.A.Cosmic): {n_cosmic} pixels, {settings}")
        log.info("cosmic rays: %d pixels (%s)", n_cosmic, settings["fill"])
    cfa, cfa_header, cfa_history = (data, header.copy(), list(history)) if pattern else (None, None, None)
    if pattern:
        data = debayer(data, pattern, method=p.debayer_method)
        history.append(f"astroflow debayer: {pattern}, {p.debayer_method}")
        header["DEBAYER"] = (pattern, "CFA pattern before debayering")
        del header["BAYERPAT"]
    if network:
        # No flat frames and no (accepted) sky flat: the flat-correction network estimates the
        # light's flat and gradient from the light itself (after debayering: one field per colour).
        from astroflow.calibration.flatnet import correct, load_flatnet

        model, _ = load_flatnet(snakemake.input.flatnet)
        try:
            data, flat, gradient = correct(data, model)
        except ValueError as err:  # too small, NaN pixels, no positive sky: this light only
            log.warning("%s: flat-correction network not applied: %s", snakemake.input.light, err)
        else:
            flat_used = "network"
            header["FLATUSED"] = (flat_used, "flat field: real (flat frames), sky (from the lights), network, none")
            span = f"{flat.min():.3f}..{flat.max():.3f}"
            history.append(f"astroflow flat network: {snakemake.input.flatnet}, flat {span}")
            log.info("flat-correction network %s: flat %.3f..%.3f", snakemake.input.flatnet, flat.min(), flat.max())
            if cfa is not None:
                # the same correction, each mosaic pixel by its own colour's flat and gradient
                site = cfa_channel_map(cfa.shape, pattern)[..., None].astype(np.intp)
                cfa_gradient = np.take_along_axis(gradient, site, axis=2)[..., 0]
                cfa = (cfa - cfa_gradient) / np.take_along_axis(flat, site, axis=2)[..., 0]
                cfa_header["FLATUSED"] = header["FLATUSED"]
                cfa_history.append(history[-1])
    write_image(snakemake.output[0], data, header, history)
    if keep_cfa and cfa is not None:
        write_image(snakemake.output.cfa, cfa, cfa_header, cfa_history)
    elif keep_cfa:
        write_rejected(snakemake.output.cfa, "a mono light has no CFA mosaic for Bayer drizzle", header)
    log.info("%s calibrated", snakemake.input.light)
