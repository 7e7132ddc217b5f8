"""The kubetrain operator: runs TrainingJobs on Kubernetes and promotes their best model.

It never imports TensorFlow; its image has none.
"""
