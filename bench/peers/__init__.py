"""The peers Sagalog is compared with, on the same job and the same broker: ``faust_saga``
(faust-streaming) and ``temporal_saga`` (Temporal), plus what they share (``shared``)."""
