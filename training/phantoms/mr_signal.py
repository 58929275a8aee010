"""Tissue relaxation at 3 T, gadolinium relaxivity, and the signal equations of the four BraTS sequences.

Representative 3 T values (ms; PD relative to CSF), rounded; the generator jitters them by a few percent per case:

| tissue      | T1   | T2   | PD   | basis                                                                      |
|-------------|------|------|------|----------------------------------------------------------------------------|
| white matter|  850 |   75 | 0.70 | Wansapura et al., JMRI 1999 (T1 ~830, T2 ~80); Stanisz et al., MRM 2005    |
| grey matter | 1350 |  100 | 0.80 | Wansapura 1999 (T1 ~1330, T2 ~110); Stanisz 2005 (T2 ~100)                 |
| CSF         | 4200 | 1500 | 1.00 | Lu et al., JMRI 2005 (T1 ~4.2 s); CSF T2 is 1-2 s in the literature        |
| oedema      | 1500 |  200 | 0.86 | vasogenic oedema: extra water, T1 and T2 prolonged towards fluid           |
| enhancing   | 1750 |  125 | 0.85 | viable cellular tumour: T1 and T2 above grey matter                        |
| necrosis    | 2600 |  400 | 0.95 | fluid and debris: long T1 and T2, below free CSF                           |

PD of white and grey matter follows their water content (about 0.70 and 0.80, e.g. Neeb et al. 2006). The tumour
rows are phantom choices that respect the qualitative findings of glioma relaxometry, not measured values.
Gadolinium shortens relaxation as 1/T = 1/T0 + r*C with r1 ~ 4.5 and r2 ~ 5.5 /mM/s at 3 T for the macrocyclic
agents in plasma (Rohrer et al., Invest Radiol 2005); concentrations are leaky tumour rim vs intact barrier.

At 1.5 T (TISSUES_1_5T, used by the randomised acquisition profiles) T1 is shorter and T2 slightly longer:
white matter 650 / 80 ms, grey matter 1100 / 105 ms, CSF 4000 / 1800 ms (Gelman et al., Radiology 1999: WM ~660,
GM ~1190 ms at 1.5 T; Stanisz et al. 2005), tumour rows kept longer than grey matter as at 3 T (oedema 1400 / 210,
enhancing 1500 / 130, necrosis 2300 / 420). Proton density does not depend on the field. The gadolinium
relaxivities above are kept at 1.5 T (macrocyclic agents differ by about 10 % between the fields).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tissue:
    t1_ms: float
    t2_ms: float
    pd: float


TISSUES_3T = {
    "wm": Tissue(850.0, 75.0, 0.70),
    "gm": Tissue(1350.0, 100.0, 0.80),
    "csf": Tissue(4200.0, 1500.0, 1.00),
    "edema": Tissue(1500.0, 200.0, 0.86),
    "enhancing": Tissue(1750.0, 125.0, 0.85),
    "necrosis": Tissue(2600.0, 400.0, 0.95),
}
TISSUES_1_5T = {
    "wm": Tissue(650.0, 80.0, 0.70),
    "gm": Tissue(1100.0, 105.0, 0.80),
    "csf": Tissue(4000.0, 1800.0, 1.00),
    "edema": Tissue(1400.0, 210.0, 0.86),
    "enhancing": Tissue(1500.0, 130.0, 0.85),
    "necrosis": Tissue(2300.0, 420.0, 0.95),
}
GADOLINIUM_R1 = 4.5  # per mM per s
GADOLINIUM_R2 = 5.5
# Tissue gadolinium (mM) a few minutes after a 0.1 mmol/kg dose: intact blood-brain barrier keeps it to the
# blood volume; the enhancing rim leaks (its value is drawn per case and varies in space).
GADOLINIUM_MM = {"wm": 0.005, "gm": 0.01, "csf": 0.0, "edema": 0.01, "enhancing": 0.4, "necrosis": 0.0}


def with_gadolinium(t1_ms, t2_ms, concentration_mm):
    """T1 and T2 (ms) after adding contrast agent at the given concentration."""
    t1 = 1.0 / (1.0 / t1_ms + GADOLINIUM_R1 * concentration_mm / 1000.0)
    t2 = 1.0 / (1.0 / t2_ms + GADOLINIUM_R2 * concentration_mm / 1000.0)
    return t1, t2


@dataclass(frozen=True)
class MPRAGE:
    """3D inversion-prepared spoiled gradient echo (MPRAGE), the usual 3 T T1 of glioma protocols.

    Steady state of the shot: ideal-ish inversion, recovery, a train of n_lines low-angle readouts with the
    k-space centre mid-train (signal taken there), recovery to the next inversion. Every step is affine in Mz, so
    the steady state is the fixed point of one shot.
    """

    tr_ms: float = 2300.0  # inversion to inversion
    ti_ms: float = 950.0  # inversion to the k-space centre
    echo_spacing_ms: float = 7.0
    flip_deg: float = 9.0
    n_lines: int = 176
    te_ms: float = 2.3
    inversion_efficiency: float = 0.96

    def signal(self, t1_ms, t2_ms, pd):
        flip = np.deg2rad(self.flip_deg)
        relax = np.exp(-self.echo_spacing_ms / t1_ms)
        per_line = np.cos(flip) * relax
        train_steady = (1.0 - relax) / (1.0 - per_line)
        centre = self.n_lines // 2
        before_train = self.ti_ms - centre * self.echo_spacing_ms
        after_train = self.tr_ms - before_train - self.n_lines * self.echo_spacing_ms

        def one_shot(mz):
            mz = 1.0 + (-self.inversion_efficiency * mz - 1.0) * np.exp(-before_train / t1_ms)
            at_centre = train_steady + (mz - train_steady) * per_line ** centre
            end = train_steady + (mz - train_steady) * per_line ** self.n_lines
            return 1.0 + (end - 1.0) * np.exp(-after_train / t1_ms), at_centre

        offset, _ = one_shot(0.0)
        slope = one_shot(1.0)[0] - offset
        _, at_centre = one_shot(offset / (1.0 - slope))
        return pd * np.abs(at_centre) * np.sin(flip) * np.exp(-self.te_ms / t2_ms)


@dataclass(frozen=True)
class SpinEcho:
    """(Turbo) spin echo with long TR and TE: T2 weighting."""

    tr_ms: float = 5000.0
    te_ms: float = 100.0

    def signal(self, t1_ms, t2_ms, pd):
        recovery = 1.0 - 2.0 * np.exp(-(self.tr_ms - self.te_ms / 2.0) / t1_ms) + np.exp(-self.tr_ms / t1_ms)
        return pd * recovery * np.exp(-self.te_ms / t2_ms)


@dataclass(frozen=True)
class FLAIR:
    """Inversion recovery spin echo with magnitude reconstruction; TI is chosen to null CSF."""

    tr_ms: float = 9000.0
    te_ms: float = 110.0
    ti_ms: float = 2450.0

    def signal(self, t1_ms, t2_ms, pd):
        mz = 1.0 - 2.0 * np.exp(-self.ti_ms / t1_ms) + np.exp(-self.tr_ms / t1_ms)
        return pd * np.abs(mz) * np.exp(-self.te_ms / t2_ms)


def null_inversion_time(t1_ms: float, tr_ms: float) -> float:
    """TI at which a tissue's longitudinal magnetisation crosses zero in an inversion recovery with repetition TR."""
    return float(t1_ms * np.log(2.0 / (1.0 + np.exp(-tr_ms / t1_ms))))


def random_protocol(rng: np.random.Generator, csf_t1_ms: float) -> dict:
    """A plausible 3 T protocol per case (parameters vary between sites); FLAIR TI nulls this case's CSF."""
    mprage = MPRAGE(tr_ms=rng.uniform(2000, 2500), ti_ms=rng.uniform(850, 1050), flip_deg=rng.uniform(8, 10))
    t2 = SpinEcho(tr_ms=rng.uniform(4000, 6500), te_ms=rng.uniform(85, 115))
    flair_tr = rng.uniform(8000, 10000)
    flair = FLAIR(tr_ms=flair_tr, te_ms=rng.uniform(95, 125),
                  ti_ms=null_inversion_time(csf_t1_ms, flair_tr) * rng.uniform(0.985, 1.015))
    return {"t1n": mprage, "t1c": mprage, "t2w": t2, "t2f": flair}
