// Harvest's Robocode runner: one long-lived JVM that runs battles on command and prints one
// JSON line per turn on stdout (everything else Robocode prints goes to stderr).
//
// Commands, one per line on stdin:
//   BATTLE robots=sample.SpinBot,sample.Target rounds=3 seed=7 width=800 height=600
//   QUIT
// Replies: {"t":"ready",...} once, then per battle {"t":"turn",...} lines, {"t":"round_end",...}
// per round, and {"t":"battle_end",...} or {"t":"error","message":...}.

import java.io.BufferedOutputStream;
import java.io.BufferedReader;
import java.io.File;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.util.HashMap;
import java.util.Map;

import robocode.BattleResults;
import robocode.control.BattleSpecification;
import robocode.control.BattlefieldSpecification;
import robocode.control.RandomFactory;
import robocode.control.RobocodeEngine;
import robocode.control.RobotSpecification;
import robocode.control.events.BattleAdaptor;
import robocode.control.events.BattleCompletedEvent;
import robocode.control.events.BattleErrorEvent;
import robocode.control.events.RoundEndedEvent;
import robocode.control.events.TurnEndedEvent;
import robocode.control.snapshot.IBulletSnapshot;
import robocode.control.snapshot.IRobotSnapshot;
import robocode.control.snapshot.ITurnSnapshot;

public final class HarvestRunner {

    private static final class Listener extends BattleAdaptor {
        private final PrintStream out;
        private final StringBuilder line = new StringBuilder(1024);

        Listener(PrintStream out) {
            this.out = out;
        }

        @Override
        public void onTurnEnded(TurnEndedEvent event) {
            ITurnSnapshot turn = event.getTurnSnapshot();
            line.setLength(0);
            line.append("{\"t\":\"turn\",\"round\":").append(turn.getRound())
                .append(",\"turn\":").append(turn.getTurn()).append(",\"robots\":[");
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
                    .append(",\"energy\":").append(robot.getEnergy())
                    .append(",\"state\":\"").append(robot.getState()).append("\"}");
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
        }

        @Override
        public void onRoundEnded(RoundEndedEvent event) {
            out.println("{\"t\":\"round_end\",\"round\":" + event.getRound() + ",\"turns\":" + event.getTurns() + "}");
            out.flush();
        }

        @Override
        public void onBattleCompleted(BattleCompletedEvent event) {
            StringBuilder results = new StringBuilder("{\"t\":\"battle_end\",\"results\":[");
            BattleResults[] sorted = event.getIndexedResults();
            for (int i = 0; i < sorted.length; i++) {
                if (i > 0) results.append(',');
                results.append("{\"name\":\"").append(sorted[i].getTeamLeaderName())
                    .append("\",\"rank\":").append(sorted[i].getRank())
                    .append(",\"score\":").append(sorted[i].getScore())
                    .append(",\"firsts\":").append(sorted[i].getFirsts()).append('}');
            }
            out.println(results.append("]}"));
            out.flush();
        }

        @Override
        public void onBattleError(BattleErrorEvent event) {
            out.println("{\"t\":\"engine_error\",\"message\":\"" + escape(event.getError()) + "\"}");
            out.flush();
        }
    }

    static String escape(String text) {
        return text == null ? "" : text.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n");
    }

    static Map<String, String> options(String[] tokens) {
        Map<String, String> options = new HashMap<>();
        for (int i = 1; i < tokens.length; i++) {
            int equals = tokens[i].indexOf('=');
            if (equals > 0) options.put(tokens[i].substring(0, equals), tokens[i].substring(equals + 1));
        }
        return options;
    }

    public static void main(String[] args) throws Exception {
        PrintStream out = new PrintStream(new BufferedOutputStream(new FileOutputStream(FileDescriptor.out), 1 << 16),
                                          false, "UTF-8");
        System.setOut(System.err);  // Robocode and robots print to System.out: keep the protocol stream clean
        RobocodeEngine.setLogMessagesEnabled(false);
        RobocodeEngine engine = new RobocodeEngine(new File(args[0]));
        engine.addBattleListener(new Listener(out));
        engine.setVisible(args.length > 1 && args[1].equals("gui"));
        out.println("{\"t\":\"ready\",\"version\":\"" + escape(engine.getVersion()) + "\"}");
        out.flush();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, "UTF-8"));
        String command;
        while ((command = in.readLine()) != null) {
            String[] tokens = command.trim().split("\\s+");
            if (tokens[0].equals("QUIT")) break;
            if (!tokens[0].equals("BATTLE")) {
                out.println("{\"t\":\"error\",\"message\":\"unknown command " + escape(tokens[0]) + "\"}");
                out.flush();
                continue;
            }
            Map<String, String> options = options(tokens);
            String names = options.getOrDefault("robots", "sample.SpinBot,sample.Target");
            RobotSpecification[] robots = engine.getLocalRepository(names);
            if (robots.length != names.split(",").length) {
                StringBuilder found = new StringBuilder();
                for (RobotSpecification robot : robots) found.append(found.length() > 0 ? "," : "").append(robot.getClassName());
                out.println("{\"t\":\"error\",\"message\":\"robots " + escape(names) + ": only [" + escape(found.toString())
                            + "] are installed\"}");
                out.flush();
                continue;
            }
            if (options.containsKey("seed")) RandomFactory.resetDeterministic(Long.parseLong(options.get("seed")));
            BattlefieldSpecification field = new BattlefieldSpecification(
                Integer.parseInt(options.getOrDefault("width", "800")), Integer.parseInt(options.getOrDefault("height", "600")));
            BattleSpecification battle = new BattleSpecification(field, Integer.parseInt(options.getOrDefault("rounds", "3")),
                                                                 450, 0.1, 100, false, robots);
            engine.runBattle(battle, true);
            out.flush();
        }
        engine.close();
        out.flush();
        System.exit(0);
    }
}
