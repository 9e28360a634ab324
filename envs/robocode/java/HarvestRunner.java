// Harvest's Robocode runner: one long-lived JVM that runs battles on command and prints one
// JSON line per turn on stdout (everything else Robocode prints goes to stderr).
//
// The protocol (commands on stdin, JSON lines on stdout) is described in one place,
// envs/robocode/protocol.py, and tests/test_robocode_protocol.py checks this runner against it.
// In short: BATTLE robots=... [options] (parsed by BattleCommand and answered with battle_start),
// ABORT and QUIT in; ready (with the outcome of each HarvestAgent patch), then per battle
// battle_start, round_start, turn, round_end, battle_end (or error) out.
//
// The ready line reports whether HarvestAgent patched Robocode (the runner loads the patched
// classes first, see `patchReport`); with a patch missing the runner refuses every battle. Each
// turn's line is printed before that turn's robots are woken (see the agent); a turn the agent
// did not report comes from Robocode's TurnEndedEvent.

package harvest.robocode;

import java.io.BufferedOutputStream;
import java.io.BufferedReader;
import java.io.File;
import java.io.FileDescriptor;
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.awt.geom.Rectangle2D;
import java.lang.reflect.Constructor;
import java.lang.reflect.Method;
import java.security.CodeSource;
import java.util.List;

import net.sf.robocode.core.Container;

import robocode.BattleResults;
import robocode.control.BattleSpecification;
import robocode.control.BattlefieldSpecification;
import robocode.control.RandomFactory;
import robocode.control.RobocodeEngine;
import robocode.control.RobotSpecification;
import robocode.control.events.BattleAdaptor;
import robocode.control.events.BattleCompletedEvent;
import robocode.control.events.BattleErrorEvent;
import robocode.control.events.BattleFinishedEvent;
import robocode.control.events.RoundEndedEvent;
import robocode.control.events.RoundStartedEvent;
import robocode.control.events.TurnEndedEvent;
import robocode.control.snapshot.IBulletSnapshot;
import robocode.control.snapshot.IRobotSnapshot;
import robocode.control.snapshot.ITurnSnapshot;

public final class HarvestRunner {
    static final String SNAPSHOT = "net.sf.robocode.battle.snapshot.TurnSnapshot";

    private static final class Listener extends BattleAdaptor implements HarvestAgent.TurnListener {
        private final PrintStream out;
        private final StringBuilder line = new StringBuilder(1024);
        private boolean live;
        private boolean battleOpen;
        private int lastRound = -1;
        private int lastTurn = -1;
        private Constructor<?> snapshotOf;
        private Method boundingBoxOf;

        Listener(PrintStream out) {
            this.out = out;
        }

        synchronized void startBattle(boolean live) {
            this.live = live;
            battleOpen = true;
            lastRound = -1;
            lastTurn = -1;
        }

        /** The battle's closing line, once: `results` null for an aborted battle. */
        synchronized void endBattle(BattleResults[] results) {
            if (!battleOpen) return;
            battleOpen = false;
            StringBuilder end = new StringBuilder("{\"t\":\"battle_end\"");
            if (results == null) end.append(",\"aborted\":true");
            end.append(",\"results\":[");
            for (int i = 0; results != null && i < results.length; i++) {
                if (i > 0) end.append(',');
                end.append("{\"name\":\"").append(results[i].getTeamLeaderName())
                    .append("\",\"rank\":").append(results[i].getRank())
                    .append(",\"score\":").append(results[i].getScore())
                    .append(",\"firsts\":").append(results[i].getFirsts()).append('}');
            }
            out.println(end.append("]}"));
            out.flush();
        }

        @Override
        public void turnReady(Object battle, List<?> robots, List<?> bullets) {
            // Robocode loads its engine in a class loader of its own: build the snapshot from there.
            try {
                if (snapshotOf == null) {
                    snapshotOf = Class.forName(SNAPSHOT, true, battle.getClass().getClassLoader())
                        .getConstructor(battle.getClass(), List.class, List.class, boolean.class);
                    boundingBoxOf = robots.get(0).getClass().getMethod("getBoundingBox");
                }
                double[] boxes = new double[2 * robots.size()];
                for (int i = 0; i < robots.size(); i++) {
                    Rectangle2D box = (Rectangle2D) boundingBoxOf.invoke(robots.get(i));
                    boxes[2 * i] = box.getX();
                    boxes[2 * i + 1] = box.getY();
                }
                emit((ITurnSnapshot) snapshotOf.newInstance(battle, robots, bullets, false), boxes);
            } catch (ReflectiveOperationException error) {
                throw new IllegalStateException("HarvestRunner: cannot snapshot the battle", error);
            }
        }

        @Override
        public void onRoundStarted(RoundStartedEvent event) {
            emit(event.getStartSnapshot(), null);
        }

        @Override
        public void onTurnEnded(TurnEndedEvent event) {
            emit(event.getTurnSnapshot(), null);
        }

        /**
         * One line per turn: the first snapshot of a (round, turn) wins (the agent's early one).
         * `boxes` (the agent's snapshots only): each robot's bounding box corner, which the radar
         * scans and which Robocode does not move back with a robot that rammed another.
         */
        private synchronized void emit(ITurnSnapshot turn, double[] boxes) {
            if (turn.getRound() == lastRound && turn.getTurn() == lastTurn) return;
            lastRound = turn.getRound();
            lastTurn = turn.getTurn();
            line.setLength(0);
            line.append("{\"t\":\"").append(turn.getTurn() == 0 ? "round_start" : "turn").append("\",\"round\":")
                .append(turn.getRound()).append(",\"turn\":").append(turn.getTurn()).append(",\"robots\":[");
            IRobotSnapshot[] robots = turn.getRobots();
            for (int i = 0; i < robots.length; i++) {
                IRobotSnapshot robot = robots[i];
                if (i > 0) line.append(',');
                line.append("{\"name\":\"").append(robot.getName())
                    .append("\",\"x\":").append(robot.getX())
                    .append(",\"y\":").append(robot.getY())
                    .append(",\"heading\":").append(robot.getBodyHeading())
                    .append(",\"gun_heading\":").append(robot.getGunHeading())
                    .append(",\"radar_heading\":").append(robot.getRadarHeading())
                    .append(",\"velocity\":").append(robot.getVelocity())
                    .append(",\"gun_heat\":").append(robot.getGunHeat())
                    .append(",\"energy\":").append(robot.getEnergy());
                if (boxes != null) {
                    line.append(",\"box_x\":").append(boxes[2 * i]).append(",\"box_y\":").append(boxes[2 * i + 1]);
                }
                line.append(",\"state\":\"").append(robot.getState()).append("\"}");
            }
            line.append("],\"bullets\":[");
            IBulletSnapshot[] bullets = turn.getBullets();
            for (int i = 0; i < bullets.length; i++) {
                IBulletSnapshot bullet = bullets[i];
                if (i > 0) line.append(',');
                line.append("{\"id\":").append(bullet.getBulletId())
                    .append(",\"owner\":").append(bullet.getOwnerIndex())
                    .append(",\"x\":").append(bullet.getX())
                    .append(",\"y\":").append(bullet.getY())
                    .append(",\"heading\":").append(bullet.getHeading())
                    .append(",\"power\":").append(bullet.getPower())
                    .append(",\"state\":\"").append(bullet.getState()).append("\"}");
            }
            line.append("]}");
            out.println(line);
            if (live) out.flush();
        }

        @Override
        public void onRoundEnded(RoundEndedEvent event) {
            out.println("{\"t\":\"round_end\",\"round\":" + event.getRound() + ",\"turns\":" + event.getTurns() + "}");
            out.flush();
        }

        @Override
        public void onBattleFinished(BattleFinishedEvent event) {
            if (event.isAborted()) endBattle(null);
        }

        @Override
        public void onBattleCompleted(BattleCompletedEvent event) {
            endBattle(event.getIndexedResults());
        }

        @Override
        public void onBattleError(BattleErrorEvent event) {
            out.println("{\"t\":\"engine_error\",\"message\":\"" + escape(event.getError()) + "\"}");
            out.flush();
        }
    }

    static String escape(String text) {
        if (text == null) return "";
        StringBuilder escaped = new StringBuilder(text.length() + 16);
        for (char c : text.toCharArray()) {
            if (c == '"' || c == '\\') escaped.append('\\').append(c);
            else if (c == '\n') escaped.append("\\n");
            else if (c < 0x20) escaped.append(String.format("\\u%04x", (int) c));
            else escaped.append(c);
        }
        return escaped.toString();
    }

    static void error(PrintStream out, String message) {
        out.println("{\"t\":\"error\",\"message\":\"" + escape(message) + "\"}");
        out.flush();
    }

    /** Ends the running battle (if any); its battle_end is printed once, whoever ends it. */
    static void abort(RobocodeEngine engine, Listener listener) {
        engine.abortCurrentBattle();
        engine.waitTillBattleOver();
        listener.endBattle(null);
    }

    /**
     * Loads each class HarvestAgent patches through Robocode's engine loader (as a battle would)
     * and describes what the agent did, as the ready line's `patches`; `unpatched` collects what
     * is missing, one "class: why" per patch.
     */
    static String patchReport(StringBuilder unpatched) {
        StringBuilder report = new StringBuilder("[");
        for (String target : HarvestAgent.TARGETS) {
            String className = target.replace('/', '.');
            String jar = "";
            String failure;
            try {
                Class<?> loaded = Class.forName(className, false, Container.engineLoader);
                CodeSource source = loaded.getProtectionDomain().getCodeSource();
                if (source != null) jar = source.getLocation().getPath();
                failure = HarvestAgent.failure(target);
            } catch (ClassNotFoundException missing) {
                failure = "Robocode's engine has no class " + className;
            }
            report.append(report.length() > 1 ? "," : "").append("{\"class\":\"").append(className).append("\",\"methods\":[");
            String[] methods = HarvestAgent.methods(target);
            for (int i = 0; i < methods.length; i++) report.append(i > 0 ? "," : "").append('"').append(escape(methods[i])).append('"');
            report.append("],\"jar\":\"").append(escape(jar)).append("\",\"applied\":").append(failure == null)
                .append(",\"error\":").append(failure == null ? "null" : "\"" + escape(failure) + "\"").append('}');
            if (failure != null) unpatched.append(unpatched.length() > 0 ? "; " : "").append(className).append(": ").append(failure);
        }
        return report.append(']').toString();
    }

    /** Parses one BATTLE command, answers battle_start (or error) and runs the battle on Robocode's thread. */
    static void runBattle(RobocodeEngine engine, Listener listener, PrintStream out, String line) {
        BattleCommand command;
        try {
            command = BattleCommand.parse(line);
        } catch (IllegalArgumentException bad) {
            error(out, bad.getMessage());
            return;
        }
        out.println(command.echo());
        out.flush();
        RobotSpecification[] robots = engine.getLocalRepository(String.join(",", command.robots));
        if (robots.length != command.robots.length) {
            StringBuilder found = new StringBuilder();
            for (RobotSpecification robot : robots) found.append(found.length() > 0 ? "," : "").append(robot.getClassName());
            error(out, "robots " + String.join(",", command.robots) + ": only [" + found + "] are installed");
            return;
        }
        BattleSpecification battle;
        try {
            battle = new BattleSpecification(new BattlefieldSpecification(command.width, command.height), command.rounds,
                                             450, 0.1, 100, false, robots, command.robotSetups());
        } catch (IllegalArgumentException bad) {  // Robocode's own limits, e.g. a field of 400 to 5000 pixels
            error(out, "BATTLE: " + bad.getMessage());
            return;
        }
        if (command.seed != null) RandomFactory.resetDeterministic(command.seed);
        listener.startBattle(command.live);
        engine.runBattle(battle, false);
    }

    public static void main(String[] args) throws Exception {
        PrintStream out = new PrintStream(new BufferedOutputStream(new FileOutputStream(FileDescriptor.out), 1 << 16),
                                          false, "UTF-8");
        System.setOut(System.err);  // Robocode and robots print to System.out: keep the protocol stream clean
        RobocodeEngine.setLogMessagesEnabled(false);
        RobocodeEngine engine = new RobocodeEngine(new File(args[0]));
        Listener listener = new Listener(out);
        engine.addBattleListener(listener);
        HarvestAgent.turnListener = listener;
        engine.setVisible(args.length > 1 && args[1].equals("gui"));
        StringBuilder unpatched = new StringBuilder();
        String patches = patchReport(unpatched);
        if (unpatched.length() > 0) System.err.println("HarvestRunner: unpatched, refusing battles: " + unpatched);
        out.println("{\"t\":\"ready\",\"version\":\"" + escape(engine.getVersion()) + "\",\"patches\":" + patches + "}");
        out.flush();
        // The file descriptor itself: Robocode swaps System.in for a stream only it may read.
        BufferedReader in = new BufferedReader(new InputStreamReader(new FileInputStream(FileDescriptor.in), "UTF-8"));
        String line;
        // Battles run on Robocode's own thread, so an ABORT can arrive while one runs.
        while ((line = in.readLine()) != null) {
            String verb = line.trim().split("\\s+")[0];
            if (verb.equals("QUIT")) break;
            if (verb.equals("ABORT")) {
                abort(engine, listener);
            } else if (!verb.equals("BATTLE")) {
                error(out, "unknown command " + verb + "; expected BATTLE, ABORT or QUIT");
            } else if (unpatched.length() > 0) {
                error(out, "BATTLE refused: HarvestAgent did not patch " + unpatched);
            } else {
                engine.waitTillBattleOver();
                runBattle(engine, listener, out, line);
            }
        }
        abort(engine, listener);
        engine.close();
        out.flush();
        System.exit(0);
    }
}
