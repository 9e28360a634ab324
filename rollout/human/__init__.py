"""A person in the loop: teleoperation sessions, their key maps and windows, session folders,
quality checks on a person's episodes, the shadow policy beside a session and DAgger's review.

`collector.HumanCollector` is the collector a person drives; `config` is the run config's
`human:` section; `window` is the pygame window (and the xdotool keyboard robot that types into
it); `keymap` turns held keys into actions; `session_folder` writes the driving recorder's
layout; `quality` checks a person's episodes; `shadow_policy` runs the shadow learner's newest
policy beside the person; `review` is the frame-by-frame review window of DAgger's critic.
"""
