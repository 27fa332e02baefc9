"""The networks: students (``students``), the dual-branch teacher (``teacher``, with the
frequency transform in ``frequency``) and the forward-hook taps both expose (``taps``)."""
