# CTest script (not CMake): the relative run time of the suite's longest tests, as COST.
#
# `ctest -j` starts tests in decreasing COST. After a first run in a build directory it has
# measured costs (Testing/Temporary/CTestCostData.txt), but a fresh checkout -- CI -- has none
# and starts tests in declaration order: the ClickHouse bench and soak tests, declared last,
# then start last and run on alone at the end while the other core idles. The values are
# seconds measured on the development VM; only their order matters, and a test missing here
# costs 0 (it runs after these, in declaration order). cmake/liveio.cmake includes this after
# each test binary's discovered tests are known; names of tests not defined yet are ignored.
set_tests_properties(SoakClickhouse.ShortSoakPassesWithEveryMechanism PROPERTIES COST 70)
set_tests_properties(AttachDetachTest.Rewrite100Cycles PROPERTIES COST 69)
set_tests_properties(BenchClickhouse.QuickRunComparesResultsAndPrintsMetrics PROPERTIES COST 54)
set_tests_properties(AttachDetachTest.Inline100Cycles PROPERTIES COST 23)
set_tests_properties(LocalServerTest.KeepsDataAcrossRestartInGivenDirectory PROPERTIES COST 21)
set_tests_properties(AttachDetachTest.Got100Cycles PROPERTIES COST 21)
set_tests_properties(DatasetServerTest.ClusterAnswersLocalAndDistributedQueriesOnEveryShard PROPERTIES COST 20)
set_tests_properties(ClusterView.TopHistoryAndPrometheusCoverEveryNodeOfAThreeShardCluster PROPERTIES COST 14)
set_tests_properties(DemoTest.RunsEndToEndAndLeavesNothingBehind PROPERTIES COST 12)
set_tests_properties(ClusterUnderLoad.TopSharesAndAttachDetachOnEveryNodeWhileQueriesRun PROPERTIES COST 10)
set_tests_properties(AttachDetachTest.AllMechanisms30Cycles PROPERTIES COST 10)
set_tests_properties(NetnsCluster.AttachStatsDetachOnEveryNodeAndAStoppedNodeIsReported PROPERTIES COST 10)
set_tests_properties(InlineInterceptor.StressInstallUninstallUnderConcurrentIo PROPERTIES COST 7)
set_tests_properties(Inject.SixtyInjectUnloadCyclesWhileTargetVerifiesItsIo PROPERTIES COST 6)
set_tests_properties(Serve.PrometheusScrapesTheCountsOfAKnownWorkload PROPERTIES COST 6)
set_tests_properties(fuzz.verifier fuzz.protocol fuzz.sink fuzz.prometheus fuzz.loader fuzz.jit_diff
                     PROPERTIES COST 5)
set_tests_properties(FaultInjection.TargetCallsKeepNativeResultsUnderEveryEngineFault PROPERTIES COST 5)
set_tests_properties(ObserveCli.EveryCommandOnALiveClickHouse PROPERTIES COST 5)
set_tests_properties(SyscallRewrite.HundredInstallUninstallCyclesUnderVerifiedIo PROPERTIES COST 5)
