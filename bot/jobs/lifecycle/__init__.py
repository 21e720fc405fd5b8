"""The parts of a job's lifecycle behind :class:`bot.jobs.tracker.Tracker`: what they share
(``context``), taking requests (``intake``), the paid call (``submitter``), waiting and posting
(``watcher``), ending a job (``finishing``), and recovery and the sweep (``keeper``)."""
