"""Open-loop load generation: profiles (the intended send schedule) and the engine that drives them.

Each kata's generator builds an async `operation(i)` against its services and hands it to `run_load` with a
profile; the `LoadResult` it returns feeds the kata's scorecard.
"""

from loadgen.engine import (
    DEFAULT_GRACE_S,
    HIGHEST_US,
    LOWEST_US,
    SIGNIFICANT_FIGURES,
    LoadResult,
    Operation,
    new_histogram,
    run_load,
)
from loadgen.profiles import (
    PROFILE_FORMS,
    Burst,
    ConstantRate,
    LoadProfile,
    Profile,
    ProfileError,
    Step,
    parse_profile,
)

__all__ = [
    "DEFAULT_GRACE_S",
    "HIGHEST_US",
    "LOWEST_US",
    "PROFILE_FORMS",
    "SIGNIFICANT_FIGURES",
    "Burst",
    "ConstantRate",
    "LoadProfile",
    "LoadResult",
    "Operation",
    "Profile",
    "ProfileError",
    "Step",
    "new_histogram",
    "parse_profile",
    "run_load",
]
