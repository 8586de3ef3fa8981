"""testbed: a network-emulating integration testbed for virtualisation QE.

Data flows one way: a playbook is parsed into a plan (model), the plan runs
against a lab (hosts, net, virt, spice, lab), the run yields a timeline
(runner), the timeline yields a verdict and a report (report). The CLI and
the pytest plugin are thin edges over the runner. Lower layers never import
higher ones; the order is model < hosts < net < virt < spice < lab < runner
< report < cli.
"""

__version__ = "0.1.0"
