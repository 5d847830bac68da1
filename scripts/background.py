"""Entry script of rule background: a stack or image -> background.fits and corrected.{fits,tif,png},
corrected_f32.tif (gradient removal, then colour calibration of RGB images).

Gradient removal: :func:`astroflow.restoration.background.fit_background`; colour calibration:
:func:`astroflow.restoration.colour.calibrate_colour`. A stage that is off (or not for this
target's kind) leaves the image as it is; with both off ``corrected`` is a copy of the input and
``background.fits`` is zero.
"""

import logging
import warnings

import numpy as np

from astroflow.io.export import save_linear_png, save_preview_png, save_tiff16, save_tiff32
from astroflow.io.fits import derived_header, read_image, write_image
from astroflow.restoration.background import BackgroundWarning, fit_background, signal_mask
from astroflow.restoration.colour import ColourWarning, calibrate_colour
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
p = snakemake.params
path = snakemake.input.image
image, header = read_image(path)
encoding = header.get("AFENCODE", "linear")
bits = int(header.get("AFBITS", 32))
bg, cc = p.background, p.colour
history, cards = [], {}
if "flatnet" in snakemake.input.keys():
    # A finished image has no flat frames and no lights to make a sky flat from: the
    # flat-correction network (calibration.flatless network or auto) estimates its flat and
    # gradient from the image itself, before the gradient model.
    if encoding != "linear":
        log.info("flat-correction network skipped: %s is display-encoded (it needs linear data)", path)
    else:
        from astroflow.calibration.flatnet import correct, load_flatnet

        model, _ = load_flatnet(snakemake.input.flatnet)
        try:
            image, flat, _ = correct(image, model)
        except ValueError as err:  # NaN pixels, no positive sky, smaller than the network's grid
            log.warning("%s: flat-correction network not applied: %s", path, err)
        else:
            span = f"{flat.min():.3f}..{flat.max():.3f}"
            log.info("flat-correction network %s: flat %s", snakemake.input.flatnet, span)
            history.append(f"astroflow flat network: {snakemake.input.flatnet}, flat {span}")
            cards["FLATUSED"] = "network"
corrected = image.astype(np.float32)
background = np.zeros_like(corrected)
if bg["enabled"]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BackgroundWarning)
        result = fit_background(
            image,
            model=bg["model"],
            mode=bg["mode"],
            grid=bg["grid"],
            degree=bg["degree"],
            smoothing=bg["smoothing"].get(bg["model"], 0.0),
            threshold_sigma=bg["threshold_sigma"],
            grow=bg["grow"],
            reject_sigma=bg["reject_sigma"],
            min_fraction=bg["min_fraction"],
            min_samples=bg["min_samples"],
            name=path,
        )
    flagged = [w for w in caught if issubclass(w.category, BackgroundWarning)]
    for w in caught:
        log.warning("%s", w.message)
    corrected, background = result.corrected, result.background
    if flagged and bg["on_signal"] == "keep":
        # The model followed the nebula: removing it would eat the object (background.on_signal).
        log.warning("background model not removed (background.on_signal keep): the image is kept as it is; "
                    "background.fits holds the rejected model")
        corrected = image.astype(np.float32)
        history.append(f"astroflow background: {bg['model']} model looked like signal, not removed")
        cards.update(BGMODEL="kept", BGMODE=bg["mode"])
    log.info(
        "background: %s model (%s), %d of %d grid samples used, %d rejected as signal, %.0f%% of pixels masked",
        bg["model"], bg["mode"], result.n_samples, result.n_grid, result.n_rejected, 100 * result.masked_fraction,
    )
    if not (flagged and bg["on_signal"] == "keep"):
        history.append(
            f"astroflow background: {bg['model']} model ({bg['mode']}), {result.n_samples} of {result.n_grid} "
            f"samples ({result.n_rejected} rejected), pedestal {np.round(result.pedestal, 4).tolist()} kept"
        )
        cards.update(BGMODEL=bg["model"], BGMODE=bg["mode"])
    cards.update(BGNSAMP=result.n_samples, BGNREJ=result.n_rejected,
                 BGGRID=f"{result.grid_shape[0]}x{result.grid_shape[1]}")
else:
    log.info("background removal off for this target")
    cards["BGMODEL"] = "none"
rgb = corrected.ndim == 3 and corrected.shape[2] == 3
if cc["enabled"] and rgb and encoding != "linear":
    # A stretched, finished image was colour-balanced by its maker, and its "background" is
    # often nebula (the Cave Nebula image: neutralising it turned the red nebula grey-green).
    log.warning("%s is display-encoded (%s): its colour is left as it is (colour calibration needs "
                "linear data)", path, encoding)
if cc["enabled"] and rgb and encoding == "linear":
    white_balance = cc["white_balance"]
    grey = corrected.mean(axis=2)
    mask = signal_mask(grey, threshold_sigma=bg["threshold_sigma"], grow=bg["grow"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ColourWarning)
        colour = calibrate_colour(
            corrected,
            neutralise=cc["neutralise_background"],
            white_balance=white_balance,
            header=header,
            mask=mask,
            threshold_sigma=cc["threshold_sigma"],
            saturation=cc["saturation"],
            min_stars=cc["min_stars"],
            name=path,
        )
    for w in caught:
        log.warning("%s", w.message)
    corrected = colour.image
    factors = np.round(colour.factors, 5)
    log.info("colour: sky %s %s, white balance %s %s (%d stars)", np.round(colour.sky, 4).tolist(),
             "neutralised" if cc["neutralise_background"] else "kept", colour.method, factors.tolist(),
             colour.n_stars)
    history.append(
        f"astroflow colour: background {'neutralised' if cc['neutralise_background'] else 'kept'}, "
        f"white balance {colour.method} R,G,B x {factors.tolist()} ({colour.n_stars} stars)"
    )
    cards.update(CCNEUTRL=bool(cc["neutralise_background"]), CCWB=colour.method, CCWBR=float(factors[0]),
                 CCWBG=float(factors[1]), CCWBB=float(factors[2]), CCNSTARS=colour.n_stars)
else:
    log.info("colour calibration %s", "off for this target" if rgb else "skipped: not an RGB image")
    cards["CCWB"] = "none"
if not history:
    history.append("astroflow background: no gradient removal or colour calibration (a copy)")
if encoding != "linear":
    # Display data live in [0, 1]: an offset or a channel scaling can push clipped highlights or
    # the darkest shadows past the ends, which later stages (star removal's screen blend) and
    # the 8/16-bit exports cannot represent.
    outside = int(np.count_nonzero((corrected < 0) | (corrected > 1)))
    if outside:
        log.info("%d pixel values outside [0, 1] of the display data clipped", outside)
        corrected = np.clip(corrected, 0.0, 1.0)
out_header = derived_header(header, history)
out_header.update(cards)
write_image(snakemake.output.fits, corrected, out_header)
write_image(snakemake.output.background, background, derived_header(header, history[:1]))
out = snakemake.output
save_tiff16(out.tif, corrected, description="astroflow corrected", encoding=encoding)
save_tiff32(out.tif32, corrected, description="astroflow corrected", encoding=encoding)
if encoding == "linear":
    save_preview_png(out.png, corrected, **p.preview)
else:
    save_linear_png(out.png, corrected, levels=(0.0, 1.0), bits=bits)
logging.shutdown()
