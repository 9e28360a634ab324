"""The real Robocode engine (Debian `robocode`) hosted in JVMs that Harvest drives.

Importing this package registers `harvest/Robocode-v0` (`envs.robocode.env.RobocodeEnv`) with
Gymnasium; the env module itself (and its JVM) loads only when the env is made.
"""

import gymnasium as gym

gym.register(id="harvest/Robocode-v0", entry_point="harvest.envs.robocode.env:RobocodeEnv")
