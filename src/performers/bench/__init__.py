"""What ``performers bench`` runs: reproducible measurements, one module per subcommand, each
writing its results through :func:`performers.bench.results.write_results` (JSON with the
environment, markdown beside it, atomic).

==================================  ===========================================================
``performers bench ...``            module
==================================  ===========================================================
``approximation``                   :mod:`~performers.bench.approximation` (report:
                                    ``approximation_report``, ``approximation_sklearn``)
``speed``                           :mod:`~performers.bench.speed` (report: ``speed_report``,
                                    points: ``speed_points``)
``generate``                        :mod:`~performers.bench.generate`
``compat``, ``proteins-backcompat`` :mod:`~performers.bench.compat` (backward compatibility:
                                    a pretrained Transformer and a trained protein model)
``embed-score``                     :mod:`~performers.bench.embed_score`
``esm-long``                        :mod:`~performers.bench.esm_long`
``esm-fidelity``                    :mod:`~performers.bench.esm_fidelity` (the exact teacher:
                                    ``esm_teacher``)
``prepare``                         :mod:`~performers.bench.prepare`
``loader``                          :mod:`~performers.bench.loader`
``gb1-zero-shot``                   :mod:`~performers.bench.gb1_zero_shot`
``context-parallel``                :mod:`~performers.bench.context_parallel`
``gpu``                             :mod:`~performers.bench.gpu` (report: ``gpu_report``)
``proteins-table``                  :mod:`~performers.bench.proteins_table`
``proteins-long``                   :mod:`~performers.bench.proteins_long`
``proteins-precision``              :mod:`~performers.bench.proteins_precision`
``packing``                         :mod:`~performers.bench.packing`
``kernel-sweep``                    :mod:`~performers.bench.kernel_sweep`
``baselines``                       :mod:`~performers.bench.baselines`
``pixels``                          :mod:`~performers.bench.pixels`
``text``                            :mod:`~performers.bench.text`
==================================  ===========================================================

Shared pieces: :mod:`~performers.bench.results` (the writer), :mod:`~performers.bench.environment`,
:mod:`~performers.bench.protein_report` (the protein benches' reports), and for the paper's
benchmarks beyond proteins :mod:`~performers.bench.paper` (report sections, training),
:mod:`~performers.bench.paper_tasks` (tasks and attention variants),
:mod:`~performers.bench.attention_sweep` (variants trained side by side) and
:mod:`~performers.bench.paper_report` (tables and plots). The user's jobs these measure (training,
evaluation, embedding, scoring) are in :mod:`performers.jobs`; the command line options of
each subcommand in ``performers.cli.bench``.
"""
