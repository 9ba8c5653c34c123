"""Looking into runs and models: comparing runs (`graft runs compare`) and explaining a
prediction (`graft explain`: attention, rollout, logit lens, attributions). It reads what training
wrote (graft.run_files) and never imports train, serve or experiments."""
