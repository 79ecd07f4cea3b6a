"""The protection experiment: the users/tracker split of a face dataset, FaceCure's and LowKey's scoring
(1-NN, logreg, rank-1), sweeps of settings, cached embeddings, results, reports and plots."""
