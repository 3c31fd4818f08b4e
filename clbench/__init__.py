"""clbench: which continual learner forgets least as the number of classes grows?

Importing the package imports neither torch nor Avalanche, so `clbench ls`, `leaderboard` and `check`
start fast; only commands that train do.
"""

__version__ = "0.1.0"
