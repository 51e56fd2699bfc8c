"""Physical constants (CODATA 2018) and the two relations the core needs.

The full electron-optics toolkit lives in ``phaser_std.physics``; these are here so that
the core (data, state, planners) can convert units without importing the bundled plugin.
"""

from __future__ import annotations

import math

#: h·c [eV·Å]
HC_EV_A = 12398.419843320026
#: electron rest energy m₀c² [eV]
M0C2_EV = 510998.95000
#: h [J·s], e [C], m₀ [kg], c [m/s]
PLANCK_J_S = 6.62607015e-34
ELEMENTARY_CHARGE_C = 1.602176634e-19
ELECTRON_MASS_KG = 9.1093837015e-31
SPEED_OF_LIGHT_M_S = 299792458.0


def wavelength_A(energy_eV: float) -> float:
    """Relativistic electron wavelength λ = hc / √(E(2m₀c² + E)) [Å] for energy [eV]."""
    e = float(energy_eV)
    if e <= 0:
        raise ValueError(f"electron energy must be positive, got {energy_eV} eV")
    return HC_EV_A / math.sqrt(e * (2.0 * M0C2_EV + e))


def interaction_parameter(energy_eV: float) -> float:
    """σ = 2π m e λ / h² with the relativistic mass m = γ m₀ [rad/(V·Å)]."""
    lam_m = wavelength_A(energy_eV) * 1e-10
    gamma = 1.0 + float(energy_eV) / M0C2_EV
    sigma_per_V_m = 2 * math.pi * gamma * ELECTRON_MASS_KG * ELEMENTARY_CHARGE_C * lam_m / PLANCK_J_S**2
    return sigma_per_V_m * 1e-10
