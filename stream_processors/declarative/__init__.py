"""Pure building blocks for declarative definitions: the States Language, the state-machine dict.

Nothing here touches Kafka or the engine: each module is a function of its arguments, so a
compiled definition's decisions stay replayable.

- ``values``: the JSON value type the data flow works on.
- ``problems``: ``DefinitionError`` and ``Problem``, naming the state, the field and the line.
- ``errors``: the predefined error names, ``ErrorEquals`` matching, Retriers, Catchers and the
  retry delay (``next_retry``).
- ``dataflow``: ``InputPath``, ``Parameters``, ``ResultSelector``, ``ResultPath``, ``OutputPath``.
- ``intrinsics``: the ``States.*`` intrinsic functions used in payload templates.
- ``choice``: Choice rules compiled to predicates.
- ``timing``: a Wait state's deadline and timeouts read from paths.
- ``loader``: reading a JSON or YAML definition file with a line for every node.
- ``schema``: the JSON Schemas shipped with the package, and ``validate``.
"""
