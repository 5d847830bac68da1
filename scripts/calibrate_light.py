"""Entry script of rule calibrate_light: bias, dark, flat, cosmetic correction, debayer."""

from astroflow.calibration.calibrate import calibrate_light, calibrated_header, cosmetic_correction
from astroflow.calibration.debayer import debayer
from astroflow.io.fits import REASON_KEY, is_rejected, read_header, read_image, write_image, write_rejected
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
p = snakemake.params
keys = snakemake.input.keys()
header = read_header(snakemake.input.light)
if is_rejected(header):
    write_rejected(snakemake.output[0], header[REASON_KEY], header)
    log.warning("%s passed through as rejected: %s", snakemake.input.light, header[REASON_KEY])
else:
    light, header = read_image(snakemake.input.light)
    masters = {
        f"master_{kind}": read_image(snakemake.input[kind])
        for kind in ("bias", "dark", "flat")
        if kind in keys
    }
    for kind in ("bias", "dark", "flat"):
        if kind not in keys:
            log.warning("no master %s: %s correction skipped", kind, kind)
    data, history = calibrate_light(light, header, **masters)
    header = calibrated_header(header)
    pattern = header.get("BAYERPAT")
    if p.cosmetic:
        hot = read_image(snakemake.input.hot_pixels)[0] if "hot_pixels" in keys else None
        data, n_hot, n_cold = cosmetic_correction(data, pattern, hot, sigma=p.cosmetic_sigma)
        history.append(f"astroflow cosmetic_correction: {n_hot} hot, {n_cold} cold pixels")
        log.info("cosmetic correction: %d hot, %d cold pixels", n_hot, n_cold)
    if pattern:
        data = debayer(data, pattern, method=p.debayer_method)
        history.append(f"astroflow debayer: {pattern}, {p.debayer_method}")
        header["DEBAYER"] = (pattern, "CFA pattern before debayering")
        del header["BAYERPAT"]
    write_image(snakemake.output[0], data, header, history)
    log.info("%s calibrated", snakemake.input.light)
