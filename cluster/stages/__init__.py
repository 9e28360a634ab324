"""The stages of a run, in the order they happen: collect -> compact -> train -> evaluate.

Each reads and writes the run folder (`cluster.run_folder.RunPaths`), so each also runs alone
(`harvest collect | compact | train | eval`) on the previous stage's outputs.
"""
