"""The real Robocode engine (Debian `robocode`) hosted in JVMs that Harvest drives."""
