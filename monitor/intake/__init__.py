"""Intake: prediction logs from where they arrive to validated events.

``parsing`` turns raw message bytes into events or a dead-letter reason, ``kafka_consumer`` reads them from a
consumer group and hands them to the pipeline, ``reference`` reads a model's reference events from a file.
"""
