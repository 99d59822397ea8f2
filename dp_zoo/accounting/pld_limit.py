"""The smallest noise multiplier dp_zoo accounts with PLD, and what happens below it.

The cost of one exact PLD epsilon grows fast as sigma shrinks. Measured with
dp-accounting 0.6.0 on 2 shared CPU cores (numpy FFTs), one epsilon at
delta=1e-5, time and peak memory, for q=256/1437 T=120 and q=0.01 T=1000
(other load on the machine inflates the times):

    sigma  0.5: 3.5 s / 4.5 s,  0.23 / 0.19 GB
    sigma  0.3: 6.7 s / 8.3 s,  0.38 / 0.25 GB
    sigma  0.2: 14 s  / 15 s,   0.72 / 0.50 GB   (q=0.001, T=71,589: 29 s, 0.9 GB)
    sigma  0.1: 45 s  / 53 s,   2.4  / 1.7 GB
    sigma 0.05: over 60 s (stopped)              (sigma 0.01: 13 min, 11 GB)

against 0.03-0.15 s for RDP throughout and 0.3-0.6 s for the paper's ImageNet
configuration with PLD (sigma=2.5). Below ``PLD_MIN_NOISE_MULTIPLIER`` PLD is
therefore refused (``pld_refusal``) or replaced by RDP, a valid and more
conservative bound (``pld_fallback``); epsilons there are far above 100
anyway, so RDP's looseness is immaterial.
"""

# 0.2 is also calibrate_noise's lowest sigma. Between 0.2 and 0.5 PLD still
# runs, at 3-30 s and up to ~1 GB per epsilon.
PLD_MIN_NOISE_MULTIPLIER = 0.2


def pld_refusal(noise_multiplier, accountant):
    """The error message for a PLD request below the threshold, else None."""
    if accountant == "pld" and noise_multiplier < PLD_MIN_NOISE_MULTIPLIER:
        return (
            f"PLD accounting at noise_multiplier={noise_multiplier:g} < "
            f"{PLD_MIN_NOISE_MULTIPLIER:g} is impractical (one epsilon takes ~50 s and "
            "2 GB at 0.1, minutes at 0.05, 13 min and 11 GB at 0.01); use "
            "accountant='rdp' (a valid, more conservative bound) or a larger noise_multiplier."
        )
    return None


def pld_fallback(noise_multiplier, accountant):
    """(accountant to use, note or None): RDP instead of PLD below the threshold."""
    if pld_refusal(noise_multiplier, accountant):
        return "rdp", (
            f"PLD was requested, but at noise_multiplier={noise_multiplier:g} < "
            f"{PLD_MIN_NOISE_MULTIPLIER:g} one PLD epsilon takes from tens of seconds and "
            "about a gigabyte to minutes and gigabytes; epsilon is RDP's, a valid and "
            "more conservative (larger) bound."
        )
    return accountant, None
