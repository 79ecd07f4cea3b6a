"""Measuring cloaks against trackers: ``trackers/`` (their face pipelines and registry), ``protocol/``
(dataset split, scoring, experiment, reports) and ``adaptive/`` (trackers that fight back)."""
