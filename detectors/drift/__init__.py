"""Data drift. The daemon side (``settings``, ``windows``, ``client``, ``checks``) stays light;
the engines (numpy, scipy, alibi-detect) run in the drift worker process (``worker``) and in
``tfwarden backtest`` (``replay``)."""
