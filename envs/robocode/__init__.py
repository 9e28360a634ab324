"""The real Robocode engine (Debian `robocode`) hosted in JVMs that Harvest drives.

`import harvest` registers `harvest/Robocode-v0` (`harvest.envs.robocode.env.RobocodeEnv`) with
Gymnasium; the env module itself (and its JVM) loads only when the env is made.
"""
